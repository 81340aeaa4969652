//! OIDC bearer-token authentication.
//!
//! Access tokens are JWTs checked against the issuer's JWKS: the header's `alg` must be on
//! the configured allow-list (asymmetric only: `none` cannot be parsed and HS* cannot be
//! configured, so an HMAC "signed" with a public key is refused before any verification),
//! its `kid` must name a key of the JWKS whose type fits that algorithm, and `iss`, `aud`,
//! `exp` and `nbf` are checked explicitly. Keys come from
//! `{issuer}/.well-known/openid-configuration` (`jwks_uri`) or an explicit JWKS URL, are
//! cached, and are fetched again when a token names an unknown `kid` or the cache is older
//! than its TTL.
//!
//! Fetching is bounded so that an unreachable issuer cannot be turned into a request storm:
//! fetch *attempts*, failed ones included, are at least `CUSTOS_OIDC_JWKS_REFRESH_MIN_SECS`
//! apart (negative caching); cached keys are read from an immutable snapshot without taking
//! the fetch lock, so known keys verify while a fetch hangs; a stale known key never waits
//! for another caller's fetch; and keys keep verifying while the issuer is down only up to
//! `CUSTOS_OIDC_JWKS_STALE_MAX_SECS` after their last successful fetch.
//!
//! Only access tokens are accepted: the header `typ` must be on `CUSTOS_OIDC_TOKEN_TYPES`
//! (default `at+jwt` of RFC 9068 and `JWT`, which Keycloak uses), and a payload `typ` claim,
//! when present, must be `Bearer` (Keycloak ID tokens say `ID`, refresh tokens `Refresh`).
//! Tokens longer than [`MAX_TOKEN_BYTES`] are refused before any parsing.
//! Roles come from a configurable claim path (`roles`, `realm_access.roles`, ...).
//! Tokens are never logged.
//!
//! Every service authenticates through this module ([`Authenticator`] built from the same
//! [`OidcArgs`], so the same `CUSTOS_OIDC_*` settings), so they accept the same tokens and read
//! roles the same way; [`Caller`] is an extractor for any state implementing [`AuthState`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
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
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::config::{fetchable_url, normalize_typ, ConfigError, OidcArgs};

/// Longest bearer token accepted, in bytes; longer ones are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Why a bearer token was refused. The `Display` text is for logs; clients get
/// [`AuthError::public_detail`].
#[derive(Debug, Error)]
pub enum AuthError {
    /// No `Authorization: Bearer` header.
    #[error("no bearer token")]
    Missing,
    /// The token is longer than [`MAX_TOKEN_BYTES`].
    #[error("token too large")]
    TooLarge,
    /// Not an access token (header `typ` not accepted, or a payload `typ` other than
    /// `Bearer`, e.g. an ID token).
    #[error("not an access token")]
    TokenType,
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
            AuthError::TooLarge => "too_large",
            AuthError::TokenType => "token_type",
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
    /// Write-only: an audit source that sends AuditEvents to the feed. It reads nothing:
    /// no report, consent or integrity endpoint lists it.
    AuditSource,
}

impl Role {
    /// The claim value.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::ComplianceOfficer => "compliance_officer",
            Role::PrivacyOfficer => "privacy_officer",
            Role::IncidentResponder => "incident_responder",
            Role::Auditor => "auditor",
            Role::AuditSource => "audit_source",
        }
    }

    /// Parses a claim value; unknown roles are ignored by the caller.
    pub fn parse(s: &str) -> Option<Role> {
        [
            Role::ComplianceOfficer,
            Role::PrivacyOfficer,
            Role::IncidentResponder,
            Role::Auditor,
            Role::AuditSource,
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

/// The keys of one successful JWKS fetch (immutable; replaced whole by the next one).
struct KeySet {
    keys: HashMap<String, CachedKey>,
    fetched_at: Instant,
}

/// The last fetch attempt: when it started and whether it succeeded.
#[derive(Clone, Copy)]
struct Attempt {
    at: Instant,
    ok: bool,
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
    stale_max: Duration,
    token_types: Vec<String>,
    http: reqwest::Client,
    /// The latest keys, read as a snapshot (the lock is never held across an await).
    keys: std::sync::RwLock<Option<Arc<KeySet>>>,
    /// `jwks_uri` from discovery, once read.
    jwks_url: std::sync::RwLock<Option<String>>,
    /// The last fetch attempt (negative caching: attempts are `refresh_min` apart).
    last_attempt: std::sync::Mutex<Option<Attempt>>,
    /// Serializes fetches.
    refresh: Mutex<()>,
    /// Fetch attempts so far.
    fetches: AtomicU64,
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
            stale_max: Duration::from_secs(args.oidc_jwks_stale_max_secs),
            token_types: args.token_types(),
            http,
            keys: std::sync::RwLock::new(None),
            jwks_url: std::sync::RwLock::new(None),
            last_attempt: std::sync::Mutex::new(None),
            refresh: Mutex::new(()),
            fetches: AtomicU64::new(0),
        })
    }

    /// The configured issuer, without a trailing slash.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The current key set, if any was fetched.
    fn snapshot(&self) -> Option<Arc<KeySet>> {
        self.keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// A cached key by id, if its set is not older than the stale limit; and whether its
    /// set is past the TTL.
    fn cached(&self, kid: &str) -> (Option<CachedKey>, bool) {
        match self.snapshot() {
            Some(set) => {
                let age = set.fetched_at.elapsed();
                let key = (age <= self.stale_max)
                    .then(|| set.keys.get(kid).cloned())
                    .flatten();
                (key, age > self.ttl)
            }
            None => (None, true),
        }
    }

    /// Whether usable keys are cached (fetched no longer than the stale limit ago).
    pub fn has_keys(&self) -> bool {
        self.snapshot()
            .is_some_and(|s| !s.keys.is_empty() && s.fetched_at.elapsed() <= self.stale_max)
    }

    /// For `/readyz`: whether usable keys are cached. Without them it makes one fetch
    /// attempt, subject to the attempt spacing and only when no fetch is running (it never
    /// waits for another caller's), so probes cannot multiply fetches.
    pub async fn ready(&self) -> bool {
        if self.has_keys() {
            return true;
        }
        if let Ok(_guard) = self.refresh.try_lock() {
            if let Err(e) = self.attempt(false).await {
                warn!(error = %e, "JWKS not available");
            }
        }
        self.has_keys()
    }

    /// JWKS fetch attempts made so far (successful or not).
    pub fn fetch_attempts(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    async fn jwks_url(&self) -> Result<String, AuthError> {
        if let Some(u) = &self.explicit_jwks_url {
            return Ok(u.clone());
        }
        let known = self
            .jwks_url
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if let Some(u) = known {
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
        *self
            .jwks_url
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(d.jwks_uri.clone());
        Ok(d.jwks_uri)
    }

    /// Fetches the JWKS now (serialized with other fetches). Unless `force`, nothing is
    /// fetched when the last attempt, successful or not, is less than
    /// `CUSTOS_OIDC_JWKS_REFRESH_MIN_SECS` old: the answer is then that attempt's outcome.
    pub async fn refresh(&self, force: bool) -> Result<(), AuthError> {
        let _guard = self.refresh.lock().await;
        self.attempt(force).await
    }

    /// One rate-limited fetch attempt; the caller holds the fetch lock.
    async fn attempt(&self, force: bool) -> Result<(), AuthError> {
        {
            let mut last = self
                .last_attempt
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(a) = *last {
                if !force && a.at.elapsed() < self.refresh_min {
                    return if a.ok {
                        Ok(())
                    } else {
                        Err(AuthError::Jwks(
                            "the last fetch failed; not retried yet".into(),
                        ))
                    };
                }
            }
            *last = Some(Attempt {
                at: Instant::now(),
                ok: false,
            });
        }
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let result = self.fetch().await;
        metrics::counter!("custos_oidc_jwks_fetches_total",
            "result" => if result.is_ok() { "ok" } else { "error" })
        .increment(1);
        if result.is_ok() {
            if let Some(a) = self
                .last_attempt
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .as_mut()
            {
                a.ok = true;
            }
        }
        result
    }

    /// Fetches the JWKS and installs it as the current key set.
    async fn fetch(&self) -> Result<(), AuthError> {
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
        let set = KeySet {
            keys,
            fetched_at: Instant::now(),
        };
        *self
            .keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(set));
        Ok(())
    }

    async fn key(&self, kid: &str) -> Result<CachedKey, AuthError> {
        let (hit, stale) = self.cached(kid);
        match hit {
            Some(k) if !stale => return Ok(k),
            Some(k) => {
                // Known but past the TTL: refresh unless another caller already is (never
                // wait for it); the key keeps verifying up to the stale limit meanwhile.
                if let Ok(_guard) = self.refresh.try_lock() {
                    if let Err(e) = self.attempt(false).await {
                        warn!(error = %e, "JWKS refresh failed; using the cached keys");
                    }
                }
                return Ok(self.cached(kid).0.unwrap_or(k));
            }
            None => {}
        }
        // Unknown key id: wait for a running fetch, then make one attempt if the spacing
        // allows (with the issuer down, only the first of a burst fetches at all).
        {
            let _guard = self.refresh.lock().await;
            if let Err(e) = self.attempt(false).await {
                warn!(error = %e, "JWKS refresh failed");
            }
        }
        self.cached(kid).0.ok_or(AuthError::UnknownKey)
    }

    /// Verifies a bearer token and returns the caller.
    pub async fn authenticate(&self, token: &str) -> Result<Caller, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::TooLarge);
        }
        let header = decode_header(token).map_err(|_| AuthError::Malformed)?;
        if !self.algorithms.contains(&header.alg) {
            return Err(AuthError::Algorithm);
        }
        let typ_ok = header
            .typ
            .as_deref()
            .is_some_and(|t| self.token_types.contains(&normalize_typ(t)));
        if !typ_ok {
            return Err(AuthError::TokenType);
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
        // Keycloak marks its tokens in the payload: `Bearer` (access), `ID`, `Refresh`, ...
        if let Some(typ) = claims.get("typ") {
            if !typ
                .as_str()
                .is_some_and(|t| t.eq_ignore_ascii_case("bearer"))
            {
                return Err(AuthError::TokenType);
            }
        }
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

    /// Verifies an OpenID Connect ID token received from the token endpoint by a relying
    /// party (the console): the same algorithm allow-list and JWKS as access tokens, `iss` of
    /// this issuer, `aud` naming `client_id` (and `azp`, when present, equal to it), `exp`,
    /// `nbf`, a payload `typ` of `ID` when present, and `nonce` equal to the one the relying
    /// party sent. Returns the claims. The configured access-token audiences and header
    /// `typ` list do not apply.
    pub async fn verify_id_token(
        &self,
        token: &str,
        client_id: &str,
        nonce: &str,
    ) -> Result<Value, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::TooLarge);
        }
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
        v.set_audience(&[client_id]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        v.validate_exp = true;
        v.validate_nbf = true;
        v.validate_aud = true;
        v.leeway = self.leeway;
        let claims = decode::<Value>(token, &key.key, &v)
            .map_err(|e| AuthError::Invalid(format!("{:?}", e.kind())))?
            .claims;
        if let Some(typ) = claims.get("typ") {
            if !typ.as_str().is_some_and(|t| t.eq_ignore_ascii_case("id")) {
                return Err(AuthError::TokenType);
            }
        }
        if let Some(azp) = claims.get("azp") {
            if azp.as_str() != Some(client_id) {
                return Err(AuthError::Invalid("azp is another client".into()));
            }
        }
        if nonce.is_empty() || claims.get("nonce").and_then(Value::as_str) != Some(nonce) {
            return Err(AuthError::Invalid("nonce mismatch".into()));
        }
        Ok(claims)
    }

    /// Verifies the `Authorization: Bearer` token of a request's headers. Shared by every
    /// service that authenticates with this module (the query API, the consent service's
    /// privacy API).
    pub async fn authenticate_headers(&self, headers: &HeaderMap) -> Result<Caller, AuthError> {
        let value = headers.get(AUTHORIZATION).ok_or(AuthError::Missing)?;
        // "Bearer " and some whitespace on top of the largest token.
        if value.len() > MAX_TOKEN_BYTES + 64 {
            return Err(AuthError::TooLarge);
        }
        let token = Some(value)
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

/// An application state that authenticates callers: what [`Caller`] extracts with.
pub trait AuthState: Send + Sync {
    /// The service's error, rendering an [`AuthError`] as its 401 answer.
    type Rejection: From<AuthError> + axum::response::IntoResponse;
    /// The authenticator of the service.
    fn authenticator(&self) -> &Authenticator;
}

impl<S: AuthState> FromRequestParts<S> for Caller {
    type Rejection = S::Rejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, S::Rejection> {
        Ok(state
            .authenticator()
            .authenticate_headers(&parts.headers)
            .await?)
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
        let source = json!({"roles": ["audit_source"]});
        assert_eq!(
            roles_at(&source, &["roles".to_owned()]),
            vec![Role::AuditSource]
        );
        assert_eq!(Role::AuditSource.as_str(), "audit_source");
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

    fn args(issuer: &str) -> OidcArgs {
        OidcArgs {
            oidc_issuer: issuer.into(),
            oidc_audience: vec!["custos-query".into()],
            oidc_jwks_url: None,
            oidc_roles_claim: "roles".into(),
            oidc_tenants_claim: None,
            oidc_algorithms: vec!["RS256".into()],
            oidc_leeway_secs: 30,
            oidc_jwks_refresh_min_secs: 30,
            oidc_jwks_ttl_secs: 3600,
            oidc_jwks_stale_max_secs: 14_400,
            oidc_token_types: vec!["at+jwt".into(), "JWT".into()],
            oidc_http_timeout_secs: 1,
        }
    }

    /// An unsigned-looking JWT with the given header (the signature is never reached).
    fn jwt_with_header(header: &Value) -> String {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine;
        let part = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
        format!("{}.{}.c2ln", part(header), part(&json!({"sub": "x"})))
    }

    #[tokio::test]
    async fn oversized_tokens_are_refused_before_parsing() {
        // Port 9 (discard) on loopback: nothing is fetched for these anyway.
        let auth = Authenticator::new(&args("http://127.0.0.1:9")).unwrap();
        let big = format!(
            "{}{}",
            jwt_with_header(&json!({"alg": "RS256", "typ": "JWT", "kid": "k"})),
            "A".repeat(MAX_TOKEN_BYTES)
        );
        let e = auth.authenticate(&big).await.unwrap_err();
        assert_eq!(e.reason(), "too_large");
        let mut headers = HeaderMap::new();
        headers.insert(
            AUTHORIZATION,
            format!("Bearer {}", "x".repeat(MAX_TOKEN_BYTES + 100))
                .parse()
                .unwrap(),
        );
        let e = auth.authenticate_headers(&headers).await.unwrap_err();
        assert_eq!(e.reason(), "too_large");
        assert_eq!(auth.fetch_attempts(), 0);
    }

    #[tokio::test]
    async fn header_typ_must_be_an_access_token_type() {
        let auth = Authenticator::new(&args("http://127.0.0.1:9")).unwrap();
        for bad in [
            json!({"alg": "RS256", "kid": "k"}),
            json!({"alg": "RS256", "kid": "k", "typ": "id+jwt"}),
            json!({"alg": "RS256", "kid": "k", "typ": "logout+jwt"}),
        ] {
            let e = auth.authenticate(&jwt_with_header(&bad)).await.unwrap_err();
            assert_eq!(e.reason(), "token_type", "{bad}");
        }
        for good in ["JWT", "at+jwt", "application/at+jwt"] {
            let t = jwt_with_header(&json!({"alg": "RS256", "kid": "k", "typ": good}));
            // Past the type check: the key lookup fails (no issuer is listening).
            let e = auth.authenticate(&t).await.unwrap_err();
            assert_eq!(e.reason(), "unknown_kid", "{good}");
        }
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
