//! OIDC bearer-token authentication.
//!
//! Access tokens are JWTs checked against the issuer's JWKS: the header's `alg` must be on
//! the configured allow-list (asymmetric only: `none` cannot be parsed and HS* cannot be
//! configured, so an HMAC "signed" with a public key is refused before any verification),
//! its `kid` must name a key of the JWKS whose type fits that algorithm, and `iss`, `aud`,
//! `exp` and `nbf` are checked explicitly. Keys come from
//! `{issuer}/.well-known/openid-configuration` (`jwks_uri`) or an explicit JWKS URL, are
//! cached, and are fetched again when a token names an unknown `kid` (at most once per
//! `CUSTOS_OIDC_JWKS_REFRESH_MIN_SECS`) or the cache is older than its TTL.
//! Roles come from a configurable claim path (`roles`, `realm_access.roles`, ...).
//! Tokens are never logged.
//!
//! The consent service's privacy API uses this module too ([`Authenticator`] built from the
//! same [`OidcArgs`], so the same `CUSTOS_OIDC_*` settings), so both services accept the
//! same tokens and read roles the same way.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::HeaderMap;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;
use thiserror::Error;
use tokio::sync::{Mutex, RwLock};
use tracing::{info, warn};

use crate::config::{fetchable_url, ConfigError, OidcArgs};
use crate::error::ApiError;
use crate::AppState;

/// Why a bearer token was refused. The `Display` text is for logs; clients get
/// [`AuthError::public_detail`].
#[derive(Debug, Error)]
pub enum AuthError {
    /// No `Authorization: Bearer` header.
    #[error("no bearer token")]
    Missing,
    /// Not a decodable JWT (includes `alg: none`, which is not an algorithm here).
    #[error("malformed token")]
    Malformed,
    /// The algorithm is not on the allow-list or does not fit the key.
    #[error("algorithm not allowed")]
    Algorithm,
    /// The token has no `kid`, or names a key the JWKS does not hold.
    #[error("unknown signing key")]
    UnknownKey,
    /// Signature, issuer, audience or validity period check failed.
    #[error("token rejected: {0}")]
    Invalid(String),
    /// The JWKS could not be fetched.
    #[error("JWKS unavailable: {0}")]
    Jwks(String),
}

impl AuthError {
    /// A stable label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Malformed => "malformed",
            AuthError::Algorithm => "algorithm",
            AuthError::UnknownKey => "unknown_kid",
            AuthError::Invalid(_) => "invalid",
            AuthError::Jwks(_) => "jwks_unavailable",
        }
    }

    /// What the client is told.
    pub fn public_detail(&self) -> &'static str {
        match self {
            AuthError::Missing => "a bearer token is required",
            _ => "the bearer token is not acceptable",
        }
    }
}

/// The roles the API knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Access reports, disclosures, break-glass, FHIR AuditEvent search.
    ComplianceOfficer,
    /// Consent history and revocation violations.
    PrivacyOfficer,
    /// Token traces.
    IncidentResponder,
    /// Read-only access to everything, including the query audit.
    Auditor,
}

impl Role {
    /// The claim value.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::ComplianceOfficer => "compliance_officer",
            Role::PrivacyOfficer => "privacy_officer",
            Role::IncidentResponder => "incident_responder",
            Role::Auditor => "auditor",
        }
    }

    /// Parses a claim value; unknown roles are ignored by the caller.
    pub fn parse(s: &str) -> Option<Role> {
        [
            Role::ComplianceOfficer,
            Role::PrivacyOfficer,
            Role::IncidentResponder,
            Role::Auditor,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    /// `sub` of the token (a workforce identity).
    pub sub: String,
    /// `iss` of the token.
    pub issuer: String,
    /// `azp` or `client_id` of the token.
    pub client: String,
    /// `preferred_username` of the token, when it has one (a workforce identity).
    pub username: Option<String>,
    /// Known roles found in the roles claim.
    pub roles: Vec<Role>,
    /// Tenants the caller may read, from `CUSTOS_OIDC_TENANTS_CLAIM`; `None` when no tenant
    /// claim is configured (a single-tenant deployment: every tenant).
    pub tenants: Option<Vec<String>>,
}

impl Caller {
    /// Whether the caller holds one of `allowed`.
    pub fn has_any(&self, allowed: &[Role]) -> bool {
        self.roles.iter().any(|r| allowed.contains(r))
    }

    /// Whether the caller may read `tenant` (always, without a configured tenant claim).
    pub fn may_read_tenant(&self, tenant: &str) -> bool {
        self.tenants
            .as_ref()
            .is_none_or(|t| t.iter().any(|x| x == tenant))
    }

    /// Role names, for the query audit.
    pub fn role_names(&self) -> Vec<String> {
        self.roles.iter().map(|r| r.as_str().to_owned()).collect()
    }

    /// The name to record as the actor of what the caller does: `preferred_username`,
    /// else `sub`.
    pub fn actor(&self) -> &str {
        self.username.as_deref().unwrap_or(&self.sub)
    }
}

#[derive(Clone)]
struct CachedKey {
    key: DecodingKey,
    algorithms: Vec<Algorithm>,
}

#[derive(Default)]
struct KeyCache {
    keys: HashMap<String, CachedKey>,
    fetched_at: Option<Instant>,
    jwks_url: Option<String>,
}

/// Verifies bearer tokens against the issuer's JWKS.
pub struct Authenticator {
    issuer: String,
    audiences: Vec<String>,
    explicit_jwks_url: Option<String>,
    roles_claim: Vec<String>,
    tenants_claim: Option<Vec<String>>,
    algorithms: Vec<Algorithm>,
    leeway: u64,
    refresh_min: Duration,
    ttl: Duration,
    http: reqwest::Client,
    cache: RwLock<KeyCache>,
    refresh: Mutex<()>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("issuer", &self.issuer)
            .field("audiences", &self.audiences)
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

#[derive(Deserialize)]
struct RawJwks {
    keys: Vec<Value>,
}

/// The algorithms a JWK may verify (its `alg` if present, else by key type).
fn key_algorithms(jwk: &Jwk) -> Vec<Algorithm> {
    let by_type: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => vec![
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ],
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => vec![],
        },
        AlgorithmParameters::OctetKeyPair(_) => vec![Algorithm::EdDSA],
        // Symmetric keys never verify anything here.
        AlgorithmParameters::OctetKey(_) => vec![],
    };
    let declared = match jwk.common.key_algorithm {
        None => return by_type,
        Some(KeyAlgorithm::RS256) => Algorithm::RS256,
        Some(KeyAlgorithm::RS384) => Algorithm::RS384,
        Some(KeyAlgorithm::RS512) => Algorithm::RS512,
        Some(KeyAlgorithm::PS256) => Algorithm::PS256,
        Some(KeyAlgorithm::PS384) => Algorithm::PS384,
        Some(KeyAlgorithm::PS512) => Algorithm::PS512,
        Some(KeyAlgorithm::ES256) => Algorithm::ES256,
        Some(KeyAlgorithm::ES384) => Algorithm::ES384,
        Some(KeyAlgorithm::EdDSA) => Algorithm::EdDSA,
        Some(_) => return vec![],
    };
    if by_type.contains(&declared) {
        vec![declared]
    } else {
        vec![]
    }
}

/// The strings at a dotted claim path: an array of strings or a space-separated string.
pub fn strings_at<'a>(claims: &'a Value, path: &[String]) -> Vec<&'a str> {
    let mut v = claims;
    for seg in path {
        match v.get(seg) {
            Some(next) => v = next,
            None => return Vec::new(),
        }
    }
    match v {
        Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
        Value::String(s) => s.split_ascii_whitespace().collect(),
        _ => Vec::new(),
    }
}

/// Reads a dotted claim path; accepts an array of strings or a space-separated string.
pub fn roles_at(claims: &Value, path: &[String]) -> Vec<Role> {
    let names = strings_at(claims, path);
    let mut roles: Vec<Role> = names.into_iter().filter_map(Role::parse).collect();
    roles.sort_by_key(|r| r.as_str());
    roles.dedup();
    roles
}

impl Authenticator {
    /// Builds an authenticator (no I/O: keys are fetched on first use).
    pub fn new(args: &OidcArgs) -> Result<Authenticator, ConfigError> {
        args.validate()?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(args.oidc_http_timeout_secs))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ConfigError::Invalid(format!("HTTP client: {e}")))?;
        Ok(Authenticator {
            issuer: args.oidc_issuer.trim_end_matches('/').to_owned(),
            audiences: args
                .oidc_audience
                .iter()
                .map(|a| a.trim().to_owned())
                .filter(|a| !a.is_empty())
                .collect(),
            explicit_jwks_url: args.oidc_jwks_url.clone(),
            tenants_claim: args
                .oidc_tenants_claim
                .as_deref()
                .map(|c| c.split('.').map(str::to_owned).collect()),
            roles_claim: args
                .oidc_roles_claim
                .split('.')
                .map(str::to_owned)
                .collect(),
            algorithms: args.algorithms()?,
            leeway: args.oidc_leeway_secs,
            refresh_min: Duration::from_secs(args.oidc_jwks_refresh_min_secs),
            ttl: Duration::from_secs(args.oidc_jwks_ttl_secs),
            http,
            cache: RwLock::new(KeyCache::default()),
            refresh: Mutex::new(()),
        })
    }

    /// The configured issuer, without a trailing slash.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Whether keys have been loaded (for `/readyz`).
    pub async fn has_keys(&self) -> bool {
        !self.cache.read().await.keys.is_empty()
    }

    async fn jwks_url(&self) -> Result<String, AuthError> {
        if let Some(u) = &self.explicit_jwks_url {
            return Ok(u.clone());
        }
        if let Some(u) = self.cache.read().await.jwks_url.clone() {
            return Ok(u);
        }
        let url = format!("{}/.well-known/openid-configuration", self.issuer);
        let d: Discovery = self
            .http
            .get(&url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| AuthError::Jwks(format!("discovery: {e}")))?
            .json()
            .await
            .map_err(|e| AuthError::Jwks(format!("discovery document: {e}")))?;
        if d.issuer.trim_end_matches('/') != self.issuer {
            return Err(AuthError::Jwks("discovery issuer mismatch".into()));
        }
        if !fetchable_url(&d.jwks_uri) {
            return Err(AuthError::Jwks("jwks_uri must be https".into()));
        }
        self.cache.write().await.jwks_url = Some(d.jwks_uri.clone());
        Ok(d.jwks_uri)
    }

    /// Fetches the JWKS now (serialized; skipped if another caller just did it).
    pub async fn refresh(&self, force: bool) -> Result<(), AuthError> {
        let _guard = self.refresh.lock().await;
        if let Some(at) = self.cache.read().await.fetched_at {
            if at.elapsed() < self.refresh_min && !force {
                return Ok(());
            }
        }
        let url = self.jwks_url().await?;
        let raw: RawJwks = self
            .http
            .get(&url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| AuthError::Jwks(format!("jwks: {e}")))?
            .json()
            .await
            .map_err(|e| AuthError::Jwks(format!("jwks document: {e}")))?;
        let mut keys = HashMap::new();
        for v in raw.keys {
            let Ok(jwk) = serde_json::from_value::<Jwk>(v) else {
                continue;
            };
            if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
                continue;
            }
            let Some(kid) = jwk.common.key_id.clone() else {
                continue;
            };
            let algorithms = key_algorithms(&jwk);
            if algorithms.is_empty() {
                continue;
            }
            if let Ok(key) = DecodingKey::from_jwk(&jwk) {
                keys.insert(kid, CachedKey { key, algorithms });
            }
        }
        info!(keys = keys.len(), "JWKS loaded");
        let mut cache = self.cache.write().await;
        cache.keys = keys;
        cache.fetched_at = Some(Instant::now());
        Ok(())
    }

    async fn key(&self, kid: &str) -> Result<CachedKey, AuthError> {
        let (hit, stale) = {
            let cache = self.cache.read().await;
            let stale = cache.fetched_at.is_none_or(|t| t.elapsed() > self.ttl);
            (cache.keys.get(kid).cloned(), stale)
        };
        match hit {
            Some(k) if !stale => Ok(k),
            _ => {
                if let Err(e) = self.refresh(stale).await {
                    // A stale but known key still verifies while the AS is unreachable.
                    warn!(error = %e, "JWKS refresh failed");
                    return hit.ok_or(e);
                }
                self.cache
                    .read()
                    .await
                    .keys
                    .get(kid)
                    .cloned()
                    .ok_or(AuthError::UnknownKey)
            }
        }
    }

    /// Verifies a bearer token and returns the caller.
    pub async fn authenticate(&self, token: &str) -> Result<Caller, AuthError> {
        let header = decode_header(token).map_err(|_| AuthError::Malformed)?;
        if !self.algorithms.contains(&header.alg) {
            return Err(AuthError::Algorithm);
        }
        let kid = header.kid.as_deref().ok_or(AuthError::UnknownKey)?;
        let key = self.key(kid).await?;
        if !key.algorithms.contains(&header.alg) {
            return Err(AuthError::Algorithm);
        }
        let mut v = Validation::new(header.alg);
        v.algorithms = vec![header.alg];
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&self.audiences);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        v.validate_exp = true;
        v.validate_nbf = true;
        v.validate_aud = true;
        v.leeway = self.leeway;
        let data = decode::<Value>(token, &key.key, &v)
            .map_err(|e| AuthError::Invalid(format!("{:?}", e.kind())))?;
        let claims = data.claims;
        let text = |k: &str| {
            claims
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let sub = text("sub");
        if sub.is_empty() {
            return Err(AuthError::Invalid("empty sub".into()));
        }
        let client = match text("azp") {
            c if c.is_empty() => text("client_id"),
            c => c,
        };
        let username = Some(text("preferred_username")).filter(|u| !u.trim().is_empty());
        Ok(Caller {
            sub,
            issuer: text("iss"),
            client,
            username,
            roles: roles_at(&claims, &self.roles_claim),
            tenants: self.tenants_claim.as_ref().map(|path| {
                strings_at(&claims, path)
                    .into_iter()
                    .map(str::to_owned)
                    .collect()
            }),
        })
    }

    /// Verifies the `Authorization: Bearer` token of a request's headers. Shared by every
    /// service that authenticates with this module (the query API, the consent service's
    /// privacy API).
    pub async fn authenticate_headers(&self, headers: &HeaderMap) -> Result<Caller, AuthError> {
        let token = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer)
            .ok_or(AuthError::Missing)?;
        self.authenticate(token).await
    }
}

/// Extracts the bearer token from an `Authorization` header value.
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let auth: &Arc<Authenticator> = &state.auth;
        Ok(auth.authenticate_headers(&parts.headers).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn roles_from_nested_claims() {
        let c = json!({"realm_access": {"roles": ["auditor", "offline_access", "privacy_officer"]},
            "roles": "compliance_officer incident_responder"});
        let path: Vec<String> = vec!["realm_access".into(), "roles".into()];
        assert_eq!(
            roles_at(&c, &path),
            vec![Role::Auditor, Role::PrivacyOfficer]
        );
        assert_eq!(
            roles_at(&c, &["roles".to_owned()]),
            vec![Role::ComplianceOfficer, Role::IncidentResponder]
        );
        assert!(roles_at(&c, &["nope".to_owned()]).is_empty());
    }

    #[test]
    fn actor_prefers_the_username() {
        let mut c = Caller {
            sub: "3f1c".into(),
            issuer: "https://as.example".into(),
            client: "console".into(),
            username: Some("privacy-pat".into()),
            roles: vec![Role::PrivacyOfficer],
            tenants: None,
        };
        assert_eq!(c.actor(), "privacy-pat");
        c.username = None;
        assert_eq!(c.actor(), "3f1c");
    }

    #[test]
    fn tenants_bind_only_when_a_claim_is_configured() {
        let mut c = Caller {
            sub: "3f1c".into(),
            issuer: "https://as.example".into(),
            client: "console".into(),
            username: None,
            roles: vec![Role::Auditor],
            tenants: None,
        };
        assert!(c.may_read_tenant("any"));
        let claims = json!({"custos": {"tenants": ["north", "south"]}, "tenant": "east"});
        let path: Vec<String> = vec!["custos".into(), "tenants".into()];
        c.tenants = Some(
            strings_at(&claims, &path)
                .into_iter()
                .map(str::to_owned)
                .collect(),
        );
        assert!(c.may_read_tenant("north") && c.may_read_tenant("south"));
        assert!(!c.may_read_tenant("east") && !c.may_read_tenant("nort"));
        c.tenants = Some(Vec::new());
        assert!(
            !c.may_read_tenant("north"),
            "a missing claim reads no tenant"
        );
        assert_eq!(strings_at(&claims, &["tenant".to_owned()]), vec!["east"]);
    }

    #[test]
    fn bearer_header_parsing() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
    }

    #[test]
    fn symmetric_jwks_keys_verify_nothing() {
        let oct: Jwk =
            serde_json::from_value(json!({"kty": "oct", "kid": "h", "k": "c2VjcmV0"})).unwrap();
        assert!(key_algorithms(&oct).is_empty());
        let rsa_hs: Jwk = serde_json::from_value(json!({"kty": "RSA", "kid": "r", "alg": "HS256",
            "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw",
            "e": "AQAB"}))
        .unwrap();
        assert!(key_algorithms(&rsa_hs).is_empty());
        let rsa: Jwk = serde_json::from_value(json!({"kty": "RSA", "kid": "r", "alg": "RS256",
            "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw",
            "e": "AQAB"}))
        .unwrap();
        assert_eq!(key_algorithms(&rsa), vec![Algorithm::RS256]);
    }
}
