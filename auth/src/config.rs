//! OIDC settings shared by every service that authenticates callers: the same
//! `CUSTOS_OIDC_*` flags and environment variables everywhere, checked before anything
//! connects.

use clap::Args;
use jsonwebtoken::Algorithm;
use thiserror::Error;

/// Errors in the OIDC settings.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// A value is out of range or inconsistent.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// OIDC bearer-token settings.
#[derive(Debug, Clone, Args)]
pub struct OidcArgs {
    /// Expected `iss` of access tokens; discovery is read from
    /// `{issuer}/.well-known/openid-configuration` unless a JWKS URL is given.
    #[arg(long, env = "CUSTOS_OIDC_ISSUER")]
    pub oidc_issuer: String,
    /// Accepted `aud` values, comma separated (at least one).
    #[arg(long, env = "CUSTOS_OIDC_AUDIENCE", value_delimiter = ',')]
    pub oidc_audience: Vec<String>,
    /// Explicit JWKS URL (skips discovery).
    #[arg(long, env = "CUSTOS_OIDC_JWKS_URL")]
    pub oidc_jwks_url: Option<String>,
    /// Dotted path of the claim holding the caller's roles (`roles`, `realm_access.roles`).
    #[arg(long, env = "CUSTOS_OIDC_ROLES_CLAIM", default_value = "roles")]
    pub oidc_roles_claim: String,
    /// Dotted path of a claim listing the tenants the caller may read (array or
    /// space-separated string). Unset: every tenant (single-tenant deployments). Set: a request
    /// for a tenant the token does not list is refused with 403.
    #[arg(long, env = "CUSTOS_OIDC_TENANTS_CLAIM")]
    pub oidc_tenants_claim: Option<String>,
    /// Accepted signature algorithms, comma separated (asymmetric only: RS*, PS*, ES256,
    /// ES384, EdDSA; `none` and HS* are refused).
    #[arg(
        long,
        env = "CUSTOS_OIDC_ALGORITHMS",
        value_delimiter = ',',
        default_value = "RS256,PS256,ES256"
    )]
    pub oidc_algorithms: Vec<String>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    #[arg(long, env = "CUSTOS_OIDC_LEEWAY_SECS", default_value_t = 30)]
    pub oidc_leeway_secs: u64,
    /// Least time between two JWKS fetch attempts (successful or not) triggered by unknown
    /// key ids, a stale cache or `/readyz`, in seconds (1..=3600).
    #[arg(long, env = "CUSTOS_OIDC_JWKS_REFRESH_MIN_SECS", default_value_t = 30)]
    pub oidc_jwks_refresh_min_secs: u64,
    /// Age after which the cached JWKS is fetched again, in seconds.
    #[arg(long, env = "CUSTOS_OIDC_JWKS_TTL_SECS", default_value_t = 3600)]
    pub oidc_jwks_ttl_secs: u64,
    /// Age (since the last successful fetch) up to which cached keys keep verifying tokens
    /// while the issuer cannot be reached, in seconds; older keys verify nothing. At least
    /// `CUSTOS_OIDC_JWKS_TTL_SECS`.
    #[arg(
        long,
        env = "CUSTOS_OIDC_JWKS_STALE_MAX_SECS",
        default_value_t = 14_400
    )]
    pub oidc_jwks_stale_max_secs: u64,
    /// Accepted JOSE header `typ` values of access tokens, comma separated, compared without
    /// case and without an `application/` prefix. RFC 9068 access tokens carry `at+jwt`;
    /// Keycloak's carry `JWT`. Whatever the header says, a token whose payload `typ` claim is
    /// present and is not `Bearer` (Keycloak marks ID tokens `ID`, refresh tokens `Refresh`)
    /// is refused, and so is a token without a header `typ`.
    #[arg(
        long,
        env = "CUSTOS_OIDC_TOKEN_TYPES",
        value_delimiter = ',',
        default_value = "at+jwt,JWT"
    )]
    pub oidc_token_types: Vec<String>,
    /// Timeout of discovery and JWKS requests, in seconds.
    #[arg(long, env = "CUSTOS_OIDC_HTTP_TIMEOUT_SECS", default_value_t = 5)]
    pub oidc_http_timeout_secs: u64,
}

/// Parses an algorithm name of the allow-list; symmetric and `none` are refused.
pub fn parse_algorithm(name: &str) -> Result<Algorithm, ConfigError> {
    let alg = match name.trim() {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        _ => {
            return Err(ConfigError::Invalid(
                "CUSTOS_OIDC_ALGORITHMS accepts RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA (never none or HS*)"
                    .into(),
            ))
        }
    };
    Ok(alg)
}

/// Whether a URL may be fetched for keys: https, or http on a loopback host only. The URL
/// is parsed (WHATWG rules, as the HTTP client does) and its host checked, so userinfo such
/// as `http://127.0.0.1:80@as.example/` cannot pass for loopback; URLs with userinfo are
/// refused outright.
pub fn fetchable_url(url: &str) -> bool {
    use reqwest::Url;
    use std::net::IpAddr;
    let Ok(u) = Url::parse(url) else {
        return false;
    };
    if !u.username().is_empty() || u.password().is_some() {
        return false;
    }
    match (u.scheme(), u.host_str()) {
        ("https", Some(_)) => true,
        ("http", Some(host)) => {
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            host.eq_ignore_ascii_case("localhost")
                || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
        }
        _ => false,
    }
}

/// A JOSE `typ` value as compared: trimmed, lowercase, without an `application/` prefix
/// (RFC 7515 section 4.1.9).
pub fn normalize_typ(t: &str) -> String {
    let t = t.trim().to_ascii_lowercase();
    t.strip_prefix("application/").unwrap_or(&t).to_owned()
}

impl OidcArgs {
    /// The validated algorithm allow-list.
    pub fn algorithms(&self) -> Result<Vec<Algorithm>, ConfigError> {
        let algs = self
            .oidc_algorithms
            .iter()
            .filter(|a| !a.trim().is_empty())
            .map(|a| parse_algorithm(a))
            .collect::<Result<Vec<_>, _>>()?;
        if algs.is_empty() {
            return Err(ConfigError::Invalid(
                "CUSTOS_OIDC_ALGORITHMS is empty".into(),
            ));
        }
        Ok(algs)
    }

    /// The accepted header `typ` values, normalized (lowercase, no `application/`).
    pub fn token_types(&self) -> Vec<String> {
        self.oidc_token_types
            .iter()
            .map(|t| normalize_typ(t))
            .filter(|t| !t.is_empty())
            .collect()
    }

    /// Checks the OIDC settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        if !fetchable_url(&self.oidc_issuer) {
            return bad("CUSTOS_OIDC_ISSUER must be https (http only on loopback)");
        }
        if let Some(u) = &self.oidc_jwks_url {
            if !fetchable_url(u) {
                return bad("CUSTOS_OIDC_JWKS_URL must be https (http only on loopback)");
            }
        }
        if self.oidc_audience.iter().all(|a| a.trim().is_empty()) {
            return bad("CUSTOS_OIDC_AUDIENCE must name at least one audience");
        }
        let tenants_ok = self.oidc_tenants_claim.as_deref().is_none_or(|c| {
            !c.is_empty() && c.split('.').all(|seg| !seg.is_empty() && seg.len() <= 64)
        });
        if !tenants_ok {
            return bad("CUSTOS_OIDC_TENANTS_CLAIM must be a dotted claim path");
        }
        let path_ok = !self.oidc_roles_claim.is_empty()
            && self
                .oidc_roles_claim
                .split('.')
                .all(|seg| !seg.is_empty() && seg.len() <= 64);
        if !path_ok {
            return bad("CUSTOS_OIDC_ROLES_CLAIM must be a dotted claim path");
        }
        if self.oidc_leeway_secs > 300 {
            return bad("CUSTOS_OIDC_LEEWAY_SECS must be at most 300");
        }
        if self.oidc_http_timeout_secs == 0 || self.oidc_http_timeout_secs > 60 {
            return bad("CUSTOS_OIDC_HTTP_TIMEOUT_SECS must be 1..=60");
        }
        if self.oidc_jwks_refresh_min_secs == 0 || self.oidc_jwks_refresh_min_secs > 3600 {
            return bad("CUSTOS_OIDC_JWKS_REFRESH_MIN_SECS must be 1..=3600");
        }
        if self.oidc_jwks_ttl_secs == 0 {
            return bad("CUSTOS_OIDC_JWKS_TTL_SECS must be positive");
        }
        if self.oidc_jwks_stale_max_secs < self.oidc_jwks_ttl_secs {
            return bad(
                "CUSTOS_OIDC_JWKS_STALE_MAX_SECS must be at least CUSTOS_OIDC_JWKS_TTL_SECS",
            );
        }
        if self.token_types().is_empty() {
            return bad("CUSTOS_OIDC_TOKEN_TYPES must name at least one type");
        }
        self.algorithms()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn algorithm_allow_list_refuses_symmetric_and_none() {
        for bad in ["HS256", "HS384", "HS512", "none", "None", ""] {
            assert!(parse_algorithm(bad).is_err(), "{bad} accepted");
        }
        assert_eq!(parse_algorithm("RS256").ok(), Some(Algorithm::RS256));
        assert_eq!(parse_algorithm("ES256").ok(), Some(Algorithm::ES256));
    }

    #[test]
    fn key_urls_must_be_https_or_loopback() {
        assert!(fetchable_url("https://as.example/realms/x"));
        assert!(fetchable_url("http://127.0.0.1:8080/realms/x"));
        assert!(fetchable_url("http://localhost/jwks"));
        assert!(!fetchable_url("http://as.example/realms/x"));
        assert!(!fetchable_url("http://127.0.0.1.evil.example/x"));
        assert!(!fetchable_url("ftp://127.0.0.1/x"));
        assert!(fetchable_url("http://[::1]:8080/jwks"));
        assert!(fetchable_url("http://127.0.0.2/jwks"));
    }

    #[test]
    fn userinfo_cannot_pass_for_a_loopback_host() {
        // The host of these is as.example / evil.example, not 127.0.0.1.
        assert!(!fetchable_url("http://127.0.0.1:8080@as.example/realms/x"));
        assert!(!fetchable_url("http://127.0.0.1@evil.example/jwks"));
        assert!(!fetchable_url("http://localhost:x@evil.example/"));
        assert!(!fetchable_url("https://user:pw@as.example/realms/x"));
        // A backslash ends the authority (WHATWG, as the HTTP client parses it): the host is
        // 127.0.0.1 and that is where the request goes.
        assert!(fetchable_url("http://127.0.0.1\\@evil.example/"));
        assert!(!fetchable_url("not a url"));
    }

    #[test]
    fn token_types_are_normalized() {
        assert_eq!(normalize_typ(" application/AT+JWT "), "at+jwt");
        assert_eq!(normalize_typ("JWT"), "jwt");
    }
}
